"""Resumable on-disk cache of teacher/judge responses: one append-only JSONL log.

Every paid response is appended as one complete line (one ``write`` of one ``bytes`` object, then
flush + fsync) the moment it arrives, so an interrupted run loses at most the requests in flight.
A line torn by a crash is skipped on load (and the next append starts on a fresh line), so a
half-written record is never mistaken for a response. Failed requests are not cached: the next run
tries them again.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> key = cache_key("s1", "model-a", "abc123", "chain", 0)
>>> c = ResponseCache(d)
>>> c.get(key) is None
True
>>> c.put(key, {"text": "hi", "prompt_tokens": 3, "completion_tokens": 1})
>>> ResponseCache(d).get(key)["text"]
'hi'
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

LOG_NAME = "responses.jsonl"


def cache_key(sample_id: str, model: str, prompt_hash: str, kind: str, index: int) -> str:
    """Stable key of one request: which sample, which model, which exact prompt (hash), and which
    call of that prompt (``kind`` ``"chain"``/``"judge"``, ``index`` the chain number), so N chains
    of one prompt are N distinct entries."""
    raw = json.dumps([sample_id, model, prompt_hash, kind, index], ensure_ascii=True)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class ResponseCache:
    """Key -> response dict, backed by ``{directory}/responses.jsonl``; safe across threads.

    ``skipped_lines`` counts unreadable (torn) lines seen on load. A later line for the same key
    wins, which never happens in normal use (a cached key is not requested again).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.skipped_lines = 0
        needs_newline = False
        if self.path.exists():
            data = self.path.read_bytes()
            needs_newline = bool(data) and not data.endswith(b"\n")
            for line in data.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self._entries[record["key"]] = record["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped_lines += 1
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run, closed in close()
        if needs_newline:
            self._append(b"\n")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached response for ``key``, or ``None``."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store and persist one response (durable when this returns)."""
        line = (json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._append(line)
            self._entries[key] = value

    def _append(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to flush
            pass
