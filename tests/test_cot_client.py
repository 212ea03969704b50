"""ChatClient against the fake OpenAI-compatible server: retries, back-off, timeouts, payload."""

from __future__ import annotations

import base64
import io
import socket
import time

import pytest
from fake_openai_server import FakeOpenAIServer, Reply, request_images, request_text
from PIL import Image

from univg.cot.client import ChatClient, TeacherRequestError
from univg.cot.prompts import ChatPrompt, LazyImage


def _sequence(*replies: Reply):
    """A responder that plays ``replies`` in order, then repeats the last."""
    state = {"n": 0}

    def responder(body, headers):
        reply = replies[min(state["n"], len(replies) - 1)]
        state["n"] += 1
        return reply

    return responder


def _client(server: FakeOpenAIServer, **kw) -> ChatClient:
    kw = {"timeout": 0.5, "retries": 2, "backoff": 0.01, **kw}
    return ChatClient(server.base_url, "teacher-x", **kw)


MSG = [{"role": "user", "content": "hi"}]


def test_success_returns_text_usage_and_sends_model_params_and_key():
    with FakeOpenAIServer(_sequence(Reply("hello", prompt_tokens=7, completion_tokens=3))) as server:
        client = _client(server, api_key="sk-test")
        result = client.complete(MSG, temperature=0.7, max_tokens=5)
    assert (result.text, result.prompt_tokens, result.completion_tokens, result.attempts) == (
        "hello",
        7,
        3,
        1,
    )
    body = server.hits[0]
    assert body["model"] == "teacher-x" and body["temperature"] == 0.7 and body["max_tokens"] == 5
    assert body["messages"] == MSG
    assert server.headers[0]["authorization"] == "Bearer sk-test"
    assert client.stats.as_dict() == {
        "requests": 1,
        "retries": 0,
        "failures": 0,
        "prompt_tokens": 7,
        "completion_tokens": 3,
    }


@pytest.mark.parametrize("status", [500, 502, 429])
def test_5xx_and_429_are_retried_then_succeed(status):
    with FakeOpenAIServer(_sequence(Reply(status=status), Reply(status=status), Reply("ok"))) as server:
        client = _client(server)
        result = client.complete(MSG)
    assert result.text == "ok" and result.attempts == 3
    assert len(server.hits) == 3
    assert (client.stats.requests, client.stats.retries, client.stats.failures) == (3, 2, 0)


@pytest.mark.parametrize("status", [400, 401, 404])
def test_other_4xx_is_not_retried(status):
    with FakeOpenAIServer(_sequence(Reply(status=status), Reply("never"))) as server:
        client = _client(server)
        with pytest.raises(TeacherRequestError, match=f"HTTP {status}") as info:
            client.complete(MSG)
    assert info.value.status == status and info.value.attempts == 1
    assert len(server.hits) == 1
    assert (client.stats.requests, client.stats.retries, client.stats.failures) == (1, 0, 1)


def test_timeout_is_retried_and_gives_up_after_retries_plus_one_attempts():
    with FakeOpenAIServer(_sequence(Reply("late", delay=1.0))) as server:
        client = _client(server, timeout=0.2, retries=1)
        start = time.perf_counter()
        with pytest.raises(TeacherRequestError, match="gave up after 2 attempts.*timed out"):
            client.complete(MSG)
        elapsed = time.perf_counter() - start
    assert len(server.hits) == 2
    assert 0.4 <= elapsed < 1.8  # two 0.2 s timeouts and a 0.01 s back-off, not two 1 s sleeps
    assert (client.stats.requests, client.stats.retries, client.stats.failures) == (2, 1, 1)


def test_timeout_then_success():
    with FakeOpenAIServer(_sequence(Reply("late", delay=0.8), Reply("fast"))) as server:
        client = _client(server, timeout=0.2)
        assert client.complete(MSG).text == "fast"
    assert client.stats.retries == 1


def test_connection_refused_is_retried():
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ChatClient(f"http://127.0.0.1:{port}/v1", "m", timeout=0.5, retries=2, backoff=0.01)
    with pytest.raises(TeacherRequestError, match="connection error"):
        client.complete(MSG)
    assert (client.stats.requests, client.stats.retries) == (3, 2)


def test_backoff_doubles():
    with FakeOpenAIServer(_sequence(Reply(status=503), Reply(status=503), Reply("ok"))) as server:
        client = _client(server, backoff=0.1)
        start = time.perf_counter()
        client.complete(MSG)
        elapsed = time.perf_counter() - start
    # waits 0.1 and 0.2 s (+-25% jitter): between 0.225 and 0.375 s, plus request time
    assert 0.22 <= elapsed < 1.0


def test_images_travel_as_base64_data_urls(tmp_path):
    png = Image.new("RGB", (8, 6), (255, 0, 0))
    jpg_path = tmp_path / "a.jpg"
    Image.new("RGB", (10, 4), (0, 0, 255)).save(jpg_path)
    prompt = ChatPrompt(
        "sys", "find it", [LazyImage(png), LazyImage("a.jpg", tmp_path)], {"temperature": 1.0}
    )
    with FakeOpenAIServer(_sequence(Reply("ok"))) as server:
        _client(server).complete(prompt.messages(), **prompt.params)
    urls = request_images(server.hits[0])
    assert urls[0].startswith("data:image/png;base64,") and urls[1].startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert decoded.size == (8, 6) and decoded.getpixel((3, 3)) == (255, 0, 0)
    assert base64.b64decode(urls[1].split(",", 1)[1]) == jpg_path.read_bytes()  # file bytes as is
    assert request_text(server.hits[0]) == "sys\nImage 1:\nImage 2:\nfind it"


def test_prompt_hash_ignores_image_root_but_not_text_images_or_params(tmp_path):
    a = ChatPrompt("s", "t", [LazyImage("x.png", "/root1")], {"temperature": 1.0})
    assert a.hash == ChatPrompt("s", "t", [LazyImage("x.png", "/root2")], {"temperature": 1.0}).hash
    assert a.hash != ChatPrompt("s", "t2", [LazyImage("x.png", "/root1")], {"temperature": 1.0}).hash
    assert a.hash != ChatPrompt("s", "t", [LazyImage("y.png", "/root1")], {"temperature": 1.0}).hash
    assert a.hash != ChatPrompt("s", "t", [LazyImage("x.png", "/root1")], {"temperature": 0.5}).hash
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    assert (
        ChatPrompt("s", "t", [LazyImage(red)], {}).hash
        == ChatPrompt("s", "t", [LazyImage(red.copy())], {}).hash
    )
    assert ChatPrompt("s", "t", [LazyImage(red)], {}).hash != ChatPrompt("s", "t", [LazyImage(blue)], {}).hash
