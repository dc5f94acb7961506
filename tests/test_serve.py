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
    from finetune.serving import build_app
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

    served = build_app(folder, "cpu", asked).state.served
    assert served.processor.chat_template == asked.chat_template
    stop = served.model.generation_config.eos_token_id
    assert (stop if isinstance(stop, list) else [stop]) == asked.stop_token_ids
    assert served.model.generation_config.temperature == asked.sampling["temperature"]


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
    for path in ("/reset", "/load_model", "/v1/audio/transcriptions", "/v1/systemone"):
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
