"""`uv run serve` as a real process on a free loopback port, with the tiny chat model, asked
through the official `openai` client: completions streamed and not, the same reply `generate`
gives, 4xx JSON errors for bad requests after which it keeps serving, and nothing left running."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from commands import generate
from finetune.config.schema import Params
from finetune.paths import Paths

pytestmark = pytest.mark.slow  # a real server process

PROMPT = "Where is my order FH-1003?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s; then no member may be left."""
    with_group = process.poll() is None
    if with_group:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        raise AssertionError("serve did not stop within 30 s of SIGTERM") from None
    if with_group:
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # the group is empty: no worker left behind


@contextlib.contextmanager
def serving(model: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`serve` on a free loopback port until the block ends: its base URL. Up when /health
    answers (with any status: 401 needs a key, which it then has)."""
    port = free_port()
    script = shutil.which("serve")
    assert script, "`serve` is not on PATH: is the project installed (uv sync)?"
    process = subprocess.Popen([script, "--model", model, "--port", str(port), "--device", "cpu", *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"serve exited: {process.stderr.read()}"
            assert time.monotonic() < deadline, "serve did not come up within 180 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:  # not listening yet
                time.sleep(0.5)
        yield url
    finally:
        stop(process)
    assert process.returncode in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def server(trained_chat: tuple[Params, Paths]) -> Iterator[tuple[str, str]]:
    """The served model's name and base URL; the server is stopped and checked afterwards."""
    model = str(trained_chat[1].finetuned)
    with serving(model) as url:
        yield model, url


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="not-needed", timeout=120, max_retries=0)


def generated(model: str, root: Path) -> str:
    """`generate`'s greedy chat reply to PROMPT, in the tiny project."""
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        generate.run(generate.parse_args([PROMPT, "--model", model, "--temperature", "0",
                                          "--max-new-tokens", "12"]), io.StringIO(), out)
    finally:
        os.chdir(cwd)
    return out.getvalue().strip()


def test_models_lists_the_served_folder(server: tuple[str, str], client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [server[0]]
    assert client.models.retrieve(server[0]).id == server[0]


def test_chat_completion_answers_as_generate_does_streamed_or_not(
        server: tuple[str, str], client: openai.OpenAI, trained_chat: tuple[Params, Paths]) -> None:
    model = server[0]
    ask: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
                           "max_tokens": 12, "temperature": 0}
    reply = client.chat.completions.create(**ask)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 12
    # the folder's chat template and stop tokens give the reply `generate` gives (greedy)
    assert choice.message.content.strip() == generated(model, trained_chat[1].base_model.parents[1])

    chunks = list(client.chat.completions.create(**ask, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and streamed == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_plain_completions_continue_the_prompt(server: tuple[str, str], client: openai.OpenAI) -> None:
    done = client.completions.create(model=server[0], prompt="Where is my", max_tokens=6, temperature=0)
    assert isinstance(done.choices[0].text, str) and 0 < done.usage.completion_tokens <= 6
    streamed = client.completions.create(model=server[0], prompt="Where is my", max_tokens=6,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text


def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(
        server: tuple[str, str], client: openai.OpenAI) -> None:
    model, url = server
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=b'{"model": "x", "messages": [',
                                     headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=30)
    assert raw.value.code == 400
    assert "not valid JSON" in json.loads(raw.value.read())["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="messages: must be a non-empty list"):
        client.chat.completions.create(model=model, messages="hello")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=model, messages=[{"role": "bot", "content": "hi"}])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="pinned"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=model, prompt="hi", max_tokens=0)
    assert client.chat.completions.create(model=model, max_tokens=3, messages=[
        {"role": "user", "content": PROMPT}]).choices[0].message.content is not None


def test_a_missing_model_or_a_busy_port_ends_in_one_line(server: tuple[str, str], tmp_path: Path) -> None:
    script = shutil.which("serve")
    port = server[1].rsplit(":", 1)[1]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    missing = subprocess.run([script, "--model", str(tmp_path / "nowhere")], capture_output=True,
                             text=True, env=env, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith(
        f"serve: error: {tmp_path / 'nowhere'}: no model there")
    busy = subprocess.run([script, "--model", server[0], "--port", port], capture_output=True,
                          text=True, env=env, timeout=120)
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines()[-1].startswith(f"serve: error: --host 127.0.0.1 --port {port}")


def test_the_served_model_is_asked_as_inference_json_says(
        trained_chat: tuple[Params, Paths], tmp_path: Path) -> None:
    """serve reads how to ask the model through inference_for, as generate and evaluate do: a
    folder whose tokenizer and generation config lost the chat template and stop tokens is served
    with inference.json's."""
    from finetune.serving.app import build_app
    from finetune.text.prompts import inference_for

    folder = tmp_path / "model"
    shutil.copytree(trained_chat[1].finetuned, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "generation_config.json").unlink()
    asked = inference_for(folder)
    assert asked.stop_token_ids and asked.mode == "chat"

    app = build_app(folder, "cpu", asked)
    served = app.state.served
    app.state.engine.close()
    assert served.tokenizer.chat_template == asked.chat_template
    stop = served.model.generation_config.eos_token_id
    assert (stop if isinstance(stop, list) else [stop]) == asked.stop_token_ids
    assert served.model.generation_config.temperature == asked.sampling["temperature"]
    assert served.temperature == asked.sampling["temperature"] and served.stop_ids == asked.stop_token_ids


def status_of(url: str, method: str, path: str, headers: dict[str, str] | None = None,
              body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request to the loopback server, with the headers given as they are (Host included)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def test_a_pinned_server_mounts_no_admin_endpoint_refuses_other_hosts_and_sends_no_cors(
        server: tuple[str, str], client: openai.OpenAI) -> None:
    model, url = server
    chat = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2}).encode()
    json_type = {"content-type": "application/json"}
    for path in ("/reset", "/load_model", "/v1/audio/transcriptions", "/v1/systemone", "/v1/responses"):
        assert status_of(url, "POST", path, json_type, b"{}")[0] == 404, path
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host
    code, _, body = status_of(url, "POST", "/v1/chat/completions",
                              {**json_type, "Host": "evil.example:8000"}, chat)
    assert code == 421 and "evil.example" in json.loads(body)["error"]["message"]
    code, headers, _ = status_of(url, "POST", "/v1/chat/completions",
                                 {**json_type, "Origin": "https://evil.example"}, chat)
    assert code == 200 and not any(k.startswith("access-control-") for k in headers), headers
    code, headers, _ = status_of(url, "OPTIONS", "/v1/chat/completions", {
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in headers
    assert client.chat.completions.create(model=model, max_tokens=2, messages=[
        {"role": "user", "content": PROMPT}]).choices[0].message.content is not None


def test_an_api_key_is_required_on_every_endpoint_and_a_public_host_needs_one(
        trained_chat: tuple[Params, Paths]) -> None:
    model = str(trained_chat[1].finetuned)
    key = "sk-test-" + "k" * 24
    with serving(model, "--cors-origin", "https://app.example",
                 env={**os.environ, "FINETUNE_API_KEY": key}) as url:
        for method, path in (("GET", "/health"), ("GET", "/v1/models"),
                             ("POST", "/v1/chat/completions")):
            code, headers, body = status_of(url, method, path, {"Authorization": "Bearer wrong"})
            assert code == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", path
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        keyed = openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=120, max_retries=0)
        assert [m.id for m in keyed.models.list()] == [model]
        assert keyed.chat.completions.create(model=model, max_tokens=2, messages=[
            {"role": "user", "content": PROMPT}]).choices[0].message.content is not None
        code, headers, _ = status_of(url, "OPTIONS", "/v1/chat/completions", {
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        assert code == 200 and headers["access-control-allow-origin"] == "https://app.example"
    refused = subprocess.run([shutil.which("serve"), "--model", model, "--host", "0.0.0.0"],
                             capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "FINETUNE_API_KEY"})
    assert refused.returncode == 2  # refused before loading anything or binding
    assert "--host 0.0.0.0 serves other machines: pass --api-key KEY" in refused.stderr


def chat_body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, **fields}


# Hostile or careless requests, each a 400 naming the field (what the OpenAI API answers), none
# reaching the model. Raw bodies, so that no client library refuses them first.
HOSTILE: list[tuple[str, str, Any, str]] = [
    ("NaN temperature", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], '
     b'"temperature": NaN}', "NaN is not a JSON number"),
    ("temperature above 2", "/v1/chat/completions", {"temperature": 3},
     "temperature: must be a number in [0, 2]"),
    ("stop: 5", "/v1/chat/completions", {"stop": 5}, "stop: must be a string or a list of strings"),
    ("seed: 'x'", "/v1/chat/completions", {"seed": "x"}, "seed: must be an integer"),
    ("seed: 2**70", "/v1/chat/completions", {"seed": 2**70}, "seed: must be between"),
    ("logit_bias key not a token id", "/v1/chat/completions", {"logit_bias": {"abc": 1}},
     "logit_bias: 'abc' is not a token id"),
    ("logit_bias key out of the vocabulary", "/v1/chat/completions", {"logit_bias": {"99999999": 1}},
     "logit_bias: '99999999' is not a token id"),
    ("logit_bias value out of range", "/v1/chat/completions", {"logit_bias": {"5": 1000}},
     "logit_bias['5']: must be a number in [-100, 100]"),
    ("frequency_penalty: 'abc'", "/v1/chat/completions", {"frequency_penalty": "abc"},
     "frequency_penalty: must be a number"),
    ("a lone UTF-16 surrogate", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}',
     "messages[0].content: is not valid Unicode"),
    ("bytes that are not UTF-8", "/v1/chat/completions", b'{"messages": "\xff\xfe"}', "not valid UTF-8"),
    ("a generation_config object", "/v1/chat/completions", {"generation_config": {"max_new_tokens": 9}},
     "generation_config: is not a field"),
    ("max_new_tokens: 0", "/v1/chat/completions", {"max_new_tokens": 0}, "max_new_tokens: is not a field"),
    ("max_tokens: 0", "/v1/chat/completions", {"max_tokens": 0}, "max_tokens: must be between 1"),
    ("max_tokens: true", "/v1/chat/completions", {"max_tokens": True}, "max_tokens: must be an integer"),
    ("n: 50", "/v1/chat/completions", {"n": 50}, "n: only 1 choice per request"),
    ("10,000 stop strings", "/v1/chat/completions", {"stop": ["x"] * 10_000}, "stop: at most 4"),
    ("one 100,000-character stop string", "/v1/chat/completions", {"stop": "x" * 100_000},
     "stop: at most 200 characters"),
    ("top_p: 0", "/v1/chat/completions", {"top_p": 0}, "top_p: must be a number in (0, 1]"),
    ("tools", "/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools: tool calling is not supported"),
    ("an image part", "/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "only text parts are supported"),
    ("stream_options without stream", "/v1/chat/completions", {"stream_options": {"include_usage": True}},
     "stream_options: is only allowed with stream: true"),
    ("a body nested 100,000 deep", "/v1/chat/completions", b"[" * 100_000, "not valid JSON"),
    ("a body that is a list", "/v1/chat/completions", b"[1, 2]", "the body must be a JSON object"),
    ("an integer of 5,000 digits", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    ("a number too large for a float", "/v1/chat/completions", {"temperature": 10**400},
     "temperature: must be a finite number"),
    ("logprobs", "/v1/completions", {"prompt": "hi", "logprobs": 5}, "logprobs: is not supported"),
    ("an empty prompt", "/v1/completions", {"prompt": ""}, "prompt: must not be empty"),
    ("several prompts", "/v1/completions", {"prompt": ["a", "b"]}, "prompt: one prompt per request"),
    ("echo", "/v1/completions", {"prompt": "hi", "echo": True}, "echo: is not supported"),
]


def test_hostile_requests_get_a_400_naming_the_field_and_the_server_keeps_serving(
        server: tuple[str, str], client: openai.OpenAI) -> None:
    model, url = server
    json_type = {"content-type": "application/json"}
    for name, path, body, said in HOSTILE:
        if isinstance(body, dict):
            base = chat_body(model) if path.endswith("chat/completions") else {"model": model}
            body = json.dumps({**base, **body}).encode()
        code, _, answer = status_of(url, "POST", path, json_type, body)
        error = json.loads(answer)["error"]
        assert code == 400 and said in error["message"], (name, code, error)
        assert error["type"] == "invalid_request_error"
    # longer than the context: a 400 with both token counts; max_tokens above what the context
    # leaves is capped (the tiny model's context is 128 tokens)
    long = chat_body(model, messages=[{"role": "user", "content": "order " * 100_000}])
    code, _, answer = status_of(url, "POST", "/v1/chat/completions", json_type, json.dumps(long).encode())
    message = json.loads(answer)["error"]["message"]
    assert code == 400 and "this model's context is 128 tokens" in message and "the prompt is" in message
    capped = client.chat.completions.create(**chat_body(model, max_tokens=10**9, temperature=0))
    assert capped.usage.prompt_tokens + capped.usage.completion_tokens <= 128
    assert client.chat.completions.create(**chat_body(model)).choices[0].message.content is not None


QUESTIONS = ["Where is my order FH-1003?", "Can I pay in instalments?", "My parcel arrived damaged.",
             "How do I change the delivery address on an order I placed yesterday?", "Refund?",
             "Do you ship to Norway, and how long does it take?", "I was charged twice.",
             "Cancel my subscription please"]


def ask(client: openai.OpenAI, model: str, i: int, stream: bool) -> str:
    body = chat_body(model, messages=[{"role": "user", "content": f"{QUESTIONS[i % 8]} ({i})"}],
                     max_tokens=24, temperature=0)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**body, stream=True) if c.choices)
    return client.chat.completions.create(**body).choices[0].message.content


@pytest.mark.parametrize("n", [1, 4, 8, 16])
def test_concurrent_greedy_requests_answer_as_each_alone(
        server: tuple[str, str], client: openai.OpenAI, n: int) -> None:
    """n different greedy requests at once (streamed at 8 and 16) give the answers each gives
    alone; at 1, a stream gives the answer it gives unstreamed."""
    from concurrent.futures import ThreadPoolExecutor

    alone = [ask(client, server[0], i, stream=False) for i in range(n)]
    if n == 1:
        assert ask(client, server[0], 0, stream=True) == alone[0]
        return
    with ThreadPoolExecutor(n) as pool:
        together = list(pool.map(lambda i: ask(client, server[0], i, stream=n >= 8), range(n)))
    assert together == alone and len(set(alone)) > 1, (together, alone)


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        return json.loads(answer.read())


def never_stopping(model: str, max_tokens: int = 100) -> dict[str, Any]:
    """A greedy request with the model's stop tokens banned (logit_bias): only its budget, its
    time limit or its client ends it."""
    from finetune.text.prompts import inference_for

    stop = inference_for(Path(model)).stop_token_ids
    assert stop, "the tiny chat model's inference.json names its stop tokens"
    return chat_body(model, max_tokens=max_tokens, temperature=0, logit_bias={str(i): -100 for i in stop})


def test_a_disconnect_storm_stops_every_generation(trained_chat: tuple[Params, Paths]) -> None:
    """Twenty streams closed after their first chunk (one decoded at a time, so they wait in
    line), then ten plain requests whose clients give up: each stream's generation is dropped
    (none runs to its budget), nothing is left generating, and the next request is answered."""
    model = str(trained_chat[1].finetuned)
    with serving(model, "--max-batch", "1") as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stream = json.dumps({**never_stopping(model), "stream": True}).encode()
        plain = json.dumps(never_stopping(model)).encode()
        for i in range(30):
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request("POST", "/v1/chat/completions", body=stream if i < 20 else plain,
                               headers={"content-type": "application/json"})
            if i < 20:
                assert connection.getresponse().readline().startswith(b"data: ")
            connection.close()
        deadline = time.monotonic() + 60
        while health(url)["running"] or health(url)["waiting"]:
            assert time.monotonic() < deadline, health(url)
            time.sleep(0.1)
        assert health(url)["cancelled"] >= 20, health(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", timeout=60, max_retries=0)
        assert client.chat.completions.create(**chat_body(model)).choices[0].message.content is not None


def test_bounded_bodies_queue_and_time(trained_chat: tuple[Params, Paths]) -> None:
    """--max-body refuses a larger body (declared or not) before reading it; --max-batch 1 and
    --max-queue 1 answer a third request at once 503 with Retry-After; --timeout ends a long
    answer early with finish_reason "length"."""
    import threading

    model = str(trained_chat[1].finetuned)
    with serving(model, "--max-body", "64KB", "--max-batch", "1", "--max-queue", "1",
                 "--timeout", "0.02") as url:
        json_type = {"content-type": "application/json"}
        big = json.dumps(chat_body(model, messages=[{"role": "user", "content": "x" * 100_000}])).encode()
        code, _, answer = status_of(url, "POST", "/v1/chat/completions", json_type, big)
        assert code == 413 and "65536 bytes" in json.loads(answer)["error"]["message"]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)  # no Content-Length
        connection.request("POST", "/v1/chat/completions", body=iter([big[i:i + 8192] for i in
                                                                     range(0, len(big), 8192)]),
                           headers={**json_type, "Transfer-Encoding": "chunked"}, encode_chunked=True)
        assert connection.getresponse().status == 413
        connection.close()

        keyed = openai.OpenAI(base_url=url + "/v1", api_key="-", timeout=60, max_retries=0)
        endless = never_stopping(model)
        timed = keyed.chat.completions.create(**endless)
        assert timed.choices[0].finish_reason == "length" and timed.usage.completion_tokens < 100

        codes: list[tuple[int, dict[str, str]]] = []
        start = threading.Barrier(24)

        def post() -> None:
            start.wait()
            codes.append(status_of(url, "POST", "/v1/chat/completions", json_type,
                                   json.dumps(endless).encode())[:2])

        threads = [threading.Thread(target=post) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        refused = [headers for code, headers in codes if code == 503]
        assert len(codes) == 24 and refused and all(h.get("retry-after") for h in refused), codes
        assert {code for code, _ in codes} <= {200, 503}
        assert keyed.chat.completions.create(**chat_body(model)).choices[0].message.content is not None


def test_seeds_stop_strings_and_usage_hold_batched_or_not(server: tuple[str, str],
                                                           client: openai.OpenAI) -> None:
    """A seeded sampled answer is the same alone and beside other requests; a stop string ends
    the answer before it, streamed or not; include_usage adds the usage chunk."""
    from concurrent.futures import ThreadPoolExecutor

    model = server[0]
    seeded = chat_body(model, max_tokens=20, temperature=1.0, seed=7)
    alone = client.chat.completions.create(**seeded).choices[0].message.content
    others = [chat_body(model, max_tokens=20, temperature=1.0, seed=i) for i in range(6)]
    with ThreadPoolExecutor(7) as pool:
        answers = list(pool.map(lambda b: client.chat.completions.create(**b).choices[0].message.content,
                                [*others[:3], seeded, *others[3:]]))
    assert answers[3] == alone and len(set(answers)) > 1, answers

    free = client.chat.completions.create(**never_stopping(model, 30)).choices[0].message.content
    assert len(free) > 6, free
    stop = free[3:6]  # a string the answer holds: it must end there, and not be sent
    cut = client.chat.completions.create(**never_stopping(model, 30), stop=[stop])
    assert cut.choices[0].message.content == free[:free.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**never_stopping(model, 30), stop=[stop], stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == free[:free.index(stop)]
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens <= 30
