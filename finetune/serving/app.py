"""The HTTP side of `serve`: an OpenAI-compatible API (FastAPI) in front of the engine
(finetune.serving.engine): /v1/chat/completions and /v1/completions, streamed as server-sent
events or not, /v1/models and /health. Every request is checked (finetune.serving.requests)
and sized against the model's context before it reaches the engine; bodies above `max_body`
bytes are refused before they are read; a full waiting line answers 503 with Retry-After;
a client that goes away stops its generation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from finetune.models.loading import context_length, load_model, load_tokenizer, set_inference
from finetune.serving.access import authorized, host_name, is_loopback
from finetune.serving.engine import Busy, Engine, Job, threadsafe_sink
from finetune.serving.requests import (
    Ask,
    BadRequest,
    chat_request,
    completion_request,
    parse_body,
)
from finetune.text.prompts import Inference, Renderer


@dataclass
class Limits:
    """What one request, and the server, may take."""

    max_body: int = 4 * 1024 * 1024  # bytes of a request body
    max_tokens: int = 1024  # tokens one answer may have (and what the context leaves)
    timeout: float = 300.0  # seconds one request may generate for
    max_batch: int = 16  # requests decoded together
    max_queue: int = 64  # requests waiting beyond those


def error_body(message: str, status: int, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An error as the OpenAI API writes one, which its clients turn into their exceptions."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Served:
    """The model, its tokenizer and how it is asked: a request's prompt tokens and defaults."""

    def __init__(self, model_dir: Path, device: str, asked: Inference | None) -> None:
        self.name = str(model_dir)
        self.model = load_model(model_dir, device).eval()
        self.tokenizer = load_tokenizer(model_dir)
        self.asked = asked if asked is not None and asked.stop_token_ids else None
        if self.asked is not None:
            set_inference(self.model, self.tokenizer, asdict(self.asked))
        config = self.model.generation_config
        stop = config.eos_token_id if config.eos_token_id is not None else self.tokenizer.eos_token_id
        self.stop_ids = [s for s in (stop if isinstance(stop, list) else [stop]) if s is not None]
        self.context = context_length(self.model.config)
        self.vocabulary = int(self.model.config.get_text_config().vocab_size)
        sampling = bool(config.do_sample)
        self.temperature = float(config.temperature or 1.0) if sampling else 0.0
        self.top_p = float(config.top_p or 1.0) if sampling else 1.0
        self.repetition_penalty = float(config.repetition_penalty or 1.0)

    def prompt_ids(self, ask: Ask) -> list[int]:
        if ask.messages is None:
            text = ask.prompt or ""
        elif self.asked is not None:
            text = self.render(lambda: Renderer(self.tokenizer, self.asked.params).prompt(ask.messages))
        elif self.tokenizer.chat_template:
            text = self.render(lambda: self.tokenizer.apply_chat_template(
                ask.messages, add_generation_prompt=True, tokenize=False))
        else:
            raise BadRequest("messages", "this model has no chat template: use /v1/completions")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def render(how: Any) -> str:
        try:
            return how()
        except Exception as e:  # the template's own check (e.g. roles that must alternate)
            raise BadRequest("messages", f"the model's chat template refused them: {e}") from None

    def job(self, ask: Ask, prompt: list[int], limits: Limits, sink: Any) -> Job:
        """The engine's job for a checked request: its budget is what the context leaves, at
        most `limits.max_tokens`; a prompt that leaves nothing is a 400 with both counts."""
        where = "messages" if ask.messages is not None else "prompt"
        if not prompt:
            raise BadRequest(where, "renders to no tokens for this model")
        if len(prompt) >= self.context:
            raise BadRequest(where, f"the prompt is {len(prompt)} tokens; this model's context is "
                             f"{self.context} tokens, which leaves none for the answer")
        budget = min(ask.max_tokens or limits.max_tokens, limits.max_tokens, self.context - len(prompt))
        temperature = self.temperature if ask.temperature is None else ask.temperature
        return Job(prompt=prompt, max_new_tokens=budget, sink=sink, temperature=temperature,
                   top_p=ask.top_p if ask.top_p is not None else (self.top_p if temperature else 1.0),
                   seed=ask.seed, logit_bias=ask.logit_bias, frequency_penalty=ask.frequency_penalty,
                   presence_penalty=ask.presence_penalty, repetition_penalty=self.repetition_penalty,
                   stop=ask.stop, deadline=time.monotonic() + limits.timeout)


class Detokenizer:
    """A stream's text from its tokens: what is safe to send so far (not a partial character,
    nor what might be the start of a stop string), and the final text, cut at a stop string."""

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer, self.stop, self.ids, self.sent = tokenizer, stop, [], 0
        self.stopped = False

    def text(self) -> str:
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (full.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.stopped = True
            return full[:min(cuts)]
        return full

    def feed(self, token: int) -> str:
        self.ids.append(token)
        full = self.text()
        end = len(full) if self.stopped else len(full.rstrip("\ufffd"))
        if not self.stopped:
            for s in self.stop:  # hold back a tail that a stop string may start with
                for n in range(min(len(s) - 1, end), 0, -1):
                    if full[:end].endswith(s[:n]):
                        end -= n
                        break
        piece, self.sent = full[self.sent:max(end, self.sent)], max(end, self.sent)
        return piece

    def rest(self) -> str:
        full = self.text()
        piece, self.sent = full[self.sent:], len(full)
        return piece


def build_app(model: Path, device: str, asked: Inference | None = None, api_key: str | None = None,
              loopback_only: bool = True, cors_origins: list[str] | None = None,
              limits: Limits | None = None) -> Any:
    """The application, with `model` loaded and its engine running. `asked`
    (finetune.text.prompts.inference_for) sets the chat template, stop tokens and default
    sampling, so it answers as evaluate and generate ask it; a model from elsewhere (no stop
    tokens known) keeps its own. With `api_key` every request needs it; served on loopback, a
    request for another Host is refused (DNS rebinding); CORS headers only for `cors_origins`."""
    limits = limits or Limits()
    served = Served(model, device, asked)
    engine = Engine(served.model, served.tokenizer, served.stop_ids, limits.max_batch, limits.max_queue)
    app = FastAPI(title="finetune serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served, app.state.engine = served, engine
    app.router.on_shutdown.append(engine.close)
    entry = {"id": served.name, "object": "model", "owned_by": "finetune-pipeline",
             "created": int((Path(model) / "config.json").stat().st_mtime)}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **engine.load()}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [entry]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        if model_id != served.name:
            raise HTTPException(404, f"model {model_id!r} is not served here; this server has "
                                f"{served.name!r}")
        return entry

    async def body_of(request: Request) -> dict[str, Any]:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_body:
                raise TooLarge()
        body = parse_body(bytes(raw))
        name = body.get("model")
        if name is not None and name != served.name:
            raise BadRequest("model", f"this server is pinned to {served.name!r}; the request "
                             f"asked for {name!r}" if isinstance(name, str) else "must be a string")
        return body

    async def answer(request: Request, ask: Ask, chat: bool) -> Any:
        prompt = await asyncio.to_thread(served.prompt_ids, ask)  # a long prompt blocks no one
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = served.job(ask, prompt, limits, threadsafe_sink(loop, events))
        engine.submit(job)
        made = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": served.name}
        text = Detokenizer(served.tokenizer, ask.stop)
        usage = lambda n: {"prompt_tokens": len(prompt), "completion_tokens": n,  # noqa: E731
                           "total_tokens": len(prompt) + n}
        if ask.stream:
            return StreamingResponse(stream(request, job, events, text, made, chat, ask, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        async def watch() -> None:  # the client going away ends its generation at the next token
            while (await request.receive())["type"] != "http.disconnect":
                pass
            job.cancelled.set()
            events.put_nowait(("gone", None))

        watcher = asyncio.create_task(watch())
        reason = None
        try:
            while reason is None:
                kind, value = await events.get()
                if kind == "token":
                    text.feed(value)
                    if text.stopped:  # a stop string: the row leaves the batch now
                        job.cancelled.set()
                        reason = "stop"
                elif kind == "end":
                    reason = value
                elif kind == "gone":
                    return JSONResponse(error_body("the client went away", 499), status_code=499)
                else:
                    raise RuntimeError(value)
        finally:
            watcher.cancel()
        content = text.text()
        reason = "stop" if text.stopped else reason
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        return {**made, "object": "chat.completion" if chat else "text_completion",
                "choices": [choice], "usage": usage(len(job.generated))}

    async def stream(request: Request, job: Job, events: asyncio.Queue, text: Detokenizer,
                     made: dict[str, Any], chat: bool, ask: Ask, usage: Any) -> Any:
        kind_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, reason: str | None = None, first: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                    {"content": piece} if piece else {})
                choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": reason, "logprobs": None}
            return f"data: {json.dumps({**made, 'object': kind_name, 'choices': [choice]})}\n\n"

        try:
            if chat:
                yield chunk(None, first=True)
            reason = None
            while reason is None:
                kind, value = await events.get()
                if kind == "token":
                    piece = text.feed(value)
                    if piece:
                        yield chunk(piece)
                    if text.stopped:
                        job.cancelled.set()
                        reason = "stop"
                elif kind == "end":
                    piece = text.rest()
                    if piece:
                        yield chunk(piece)
                    reason = "stop" if text.stopped else value
                else:
                    yield f"data: {json.dumps(error_body(f'server error: {value}', 500))}\n\n"
                    return
            yield chunk(None, reason)
            if ask.include_usage:
                body = {**made, "object": kind_name, "choices": [], "usage": usage(len(job.generated))}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): its row leaves the batch
            job.cancelled.set()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await answer(request, chat_request(await body_of(request), served.vocabulary), True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(request, completion_request(await body_of(request), served.vocabulary), False)

    @app.middleware("http")
    async def access(request: Request, call_next: Any) -> Any:
        """The Host, the key and the body's declared size, before anything else."""
        host = host_name(request.headers.get("host", ""))
        if loopback_only and not is_loopback(host):
            return JSONResponse(error_body(f"Host {host!r} is not this server's: it serves "
                                           "127.0.0.1, ::1 and localhost only", 421), status_code=421)
        if api_key and not authorized(request.headers.get("authorization"), api_key):
            return JSONResponse(error_body("a valid API key is required (Authorization: Bearer <key>)",
                                           401, code="invalid_api_key"),
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limits.max_body:
            return too_large()
        return await call_next(request)

    def too_large() -> Any:
        return JSONResponse(error_body(f"the request body is larger than this server takes "
                                       f"({limits.max_body} bytes; serve --max-body)", 413),
                            status_code=413)

    @app.exception_handler(TooLarge)
    async def large(_: Request, exc: TooLarge) -> Any:
        return too_large()

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> Any:
        return JSONResponse(error_body(str(exc), 400, exc.param), status_code=400)

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> Any:
        return JSONResponse(error_body(f"the server is busy ({exc}); retry shortly", 503,
                                       code="server_busy"), status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Any:
        return JSONResponse(error_body(str(exc.detail), exc.status_code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> Any:  # logged with its traceback
        return JSONResponse(error_body(f"server error: {type(exc).__name__}: {exc}", 500), status_code=500)

    if cors_origins:  # outermost, so that a browser's preflight is answered before the key check
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


class TooLarge(Exception):
    """A body that grew past the limit while it was read (no Content-Length, or a false one)."""
