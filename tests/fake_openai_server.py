"""A scripted OpenAI-compatible chat server for tests (``POST /v1/chat/completions`` on 127.0.0.1).

A ``responder(body, headers) -> Reply`` decides each answer; the server records every request it
received (``hits``) so tests can count what a client paid for. Threaded, ephemeral port, daemon
handler threads (a handler sleeping past a client's timeout does not block ``stop``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server sends: ``text`` as the first choice (status 200), or an error ``status``;
    ``delay`` seconds of sleep first (to outlast a client timeout)."""

    text: str = ""
    status: int = 200
    delay: float = 0.0
    prompt_tokens: int = 100
    completion_tokens: int = 20


Responder = Callable[[dict[str, Any], dict[str, str]], Reply]


class FakeOpenAIServer:
    """``with FakeOpenAIServer(responder) as server: ChatClient(server.base_url, ...)``."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.hits: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._lock:
                    owner.hits.append(body)
                    owner.headers.append(headers)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                reply = owner.responder(body, headers)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    return self._send(reply.status, {"error": {"message": f"scripted {reply.status}"}})
                self._send(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": reply.prompt_tokens,
                            "completion_tokens": reply.completion_tokens,
                            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                        },
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, and tests start many servers.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request_text(body: dict[str, Any]) -> str:
    """All text of a chat request's messages (content parts joined), for scripting by content."""
    out = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        else:
            out.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return "\n".join(out)


def request_images(body: dict[str, Any]) -> list[str]:
    """The ``image_url`` URLs of a chat request, in order."""
    urls = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            urls.extend(part["image_url"]["url"] for part in content if part.get("type") == "image_url")
    return urls


class ScriptedTeacher:
    """A responder that plays a per-sample script.

    The sample is found by a ``[s:TAG]`` marker in the request text (put it in the question); a
    request is a judge call when its system prompt is ``judge_system``. ``script[TAG]["chain"]`` and
    ``script[TAG]["judge"]`` are lists of :class:`Reply` played in order per (tag, kind), the last
    one repeating. ``calls[(tag, kind)]`` counts requests.
    """

    def __init__(self, script: dict[str, dict[str, list[Reply]]], judge_system: str) -> None:
        self.script = script
        self.judge_system = judge_system
        self.calls: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        import re

        match = re.search(r"\[s:(\w+)\]", request_text(body))
        if match is None:
            return Reply(status=400)
        tag = match.group(1)
        kind = "judge" if body["messages"][0]["content"] == self.judge_system else "chain"
        with self._lock:
            n = self.calls.get((tag, kind), 0)
            self.calls[(tag, kind)] = n + 1
        replies = self.script[tag][kind]
        return replies[min(n, len(replies) - 1)]


def write_mig_bench(path: Any, images: list[str], questions: list[str], answer: list[float]) -> Any:
    """Write a MIG-Bench-format input (one ``common_object`` record per question) to ``path``."""
    records = [
        {
            "task": "common_object",
            "images": images,
            "question": question,
            "answer": answer,
            "additional_info": "",
            "need_format": True,
        }
        for question in questions
    ]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(records, handle)
    return path
