"""A minimal client for OpenAI-compatible chat endpoints (``POST {base}/chat/completions``).

Standard library only (``urllib``), thread-safe, so one client serves a thread pool. Retries with
exponential back-off on timeouts, connection errors, HTTP 5xx and 429; any other 4xx is a caller
error (bad model name, bad key, bad payload) and is raised at once, because repeating it only
burns time.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class TeacherRequestError(RuntimeError):
    """A chat request failed for good (after retries, or a non-retryable 4xx).

    ``status`` is the HTTP status of the last attempt (``None`` for timeouts / connection errors).
    """

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True)
class ChatResult:
    """One completed chat request: the first choice's text and the server's token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int


@dataclass
class ClientStats:
    """Counters over every request a client made (HTTP attempts, not logical calls)."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ChatClient:
    """Calls ``{base_url}/chat/completions`` for one model.

    ``timeout`` is seconds per HTTP attempt; ``retries`` is how many attempts follow a failed first
    one (so at most ``retries + 1`` requests per call); the wait before retry ``k`` (0-based) is
    ``backoff * 2**k`` seconds with +-25% jitter, capped at ``max_backoff`` (a 429's ``Retry-After``
    header, when present and larger, wins up to the same cap).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = ClientStats()
        self._lock = threading.Lock()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """Send one chat request and return the first choice; ``params`` go into the body as is
        (``temperature``, ``max_tokens``, ...). Raises :class:`TeacherRequestError` when it fails."""
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        last: _Retryable | None = None
        for attempt in range(self.retries + 1):
            if attempt > 0:
                self._count(retries=1)
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1) * random.uniform(0.75, 1.25))
                if last is not None and last.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, last.retry_after))
                time.sleep(delay)
            self._count(requests=1)
            try:
                payload = self._post(body)
            except _Retryable as err:
                last = err
                continue
            except TeacherRequestError as err:
                err.attempts = attempt + 1
                self._count(failures=1)
                raise
            text = _first_choice_text(payload)
            usage = payload.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            self._count(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            return ChatResult(text, prompt_tokens, completion_tokens, attempt + 1)
        self._count(failures=1)
        assert last is not None
        raise TeacherRequestError(
            f"{self.url}: gave up after {self.retries + 1} attempts: {last}",
            status=last.status,
            attempts=self.retries + 1,
        )

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            if err.code >= 500 or err.code == 429:
                raise _Retryable(f"HTTP {err.code}: {detail}", err.code, _retry_after(err)) from err
            raise TeacherRequestError(f"{self.url}: HTTP {err.code}: {detail}", status=err.code) from err
        except TimeoutError as err:
            raise _Retryable(f"timed out after {self.timeout} s") from err
        except urllib.error.URLError as err:
            # urlopen wraps connect-time timeouts and refusals alike in URLError.
            raise _Retryable(f"connection error: {err.reason}") from err
        except (ConnectionError, OSError, http.client.HTTPException) as err:
            # e.g. the server closed the socket mid-response (http.client.RemoteDisconnected).
            raise _Retryable(f"connection error: {err!r}") from err
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as err:
            # A 200 with a broken body is usually a proxy glitch: worth another try.
            raise _Retryable(f"response is not JSON: {raw[:200]!r}") from err
        if not isinstance(payload, dict) or not payload.get("choices"):
            raise _Retryable(f"response has no choices: {raw[:200]!r}")
        return payload


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _first_choice_text(payload: dict[str, Any]) -> str:
    message = payload["choices"][0].get("message") or {}
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts even for text
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
