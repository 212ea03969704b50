"""One evaluation at a time in a predictions folder: a lock file created with ``O_CREAT | O_EXCL``
that names its holder (host, pid, start time, command).

A second run that finds the lock refuses with one line naming the holder and the lock's path. A
lock whose holder is a dead process on this host is stale: it is taken over and the take-over is
said. A lock of another host cannot be checked from here; its message says how to remove it. The
lock is released when the run tears down, and at interpreter exit after an exception.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from univg.core.errors import UsageError

#: The lock file's name inside the predictions folder.
LOCK_NAME = "predictions.lock"


class PredictionsLockedError(UsageError, PermissionError):
    """Another evaluation holds the predictions folder; the message names the holder and the lock."""


def _holder_text(holder: dict[str, Any]) -> str:
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}, "
        f"command {holder.get('command', '?')!r}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    """The holder written in the lock, or ``None`` when it is unreadable (cut off or foreign)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class PredictionsLock:
    """The lock of one predictions folder, held by this process between :meth:`acquire` and
    :meth:`release`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": f"{os.getpid()}-{time.time_ns()}",
            "command": " ".join(sys.argv) or "python",
        }
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock; returns a line to print when a stale lock was taken over, else ``None``.

        Raises :class:`PredictionsLockedError` when a live run (or one that cannot be checked)
        holds it.
        """
        stale = None
        for _ in range(3):
            if self._create():
                self.held = True
                atexit.register(self.release)
                if stale is None:
                    return None
                return (
                    f"univg: took over the stale lock {self.path} of a run that is no longer alive ({stale})"
                )
            other = _read(self.path)
            if other is None:
                if not self.path.exists():
                    continue  # released between the create and the read: try again
                raise PredictionsLockedError(
                    f"predictions folder {self.path.parent} is locked by {self.path}, whose holder cannot be "
                    f"read; if no evaluation writes into this folder, delete {self.path} and rerun"
                )
            if not self._is_stale(other):
                raise PredictionsLockedError(
                    f"predictions folder {self.path.parent} is in use by another evaluation "
                    f"({_holder_text(other)}); lock {self.path}: wait for it, choose another "
                    f"--model.init_args.predictions_dir, or if that run is no longer alive delete {self.path}"
                )
            if not self._remove_if_unchanged(other):
                continue
            if other.get("pid") != os.getpid():
                stale = _holder_text(other)
        raise PredictionsLockedError(
            f"predictions folder {self.path.parent}: lock {self.path} keeps changing hands; another evaluation is "
            "starting in this folder"
        )

    def release(self) -> None:
        """Remove the lock if it is still this run's (never another run's lock that took over)."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        other = _read(self.path)
        if other is not None and other.get("token") == self.holder["token"]:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.holder) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def _is_stale(self, other: dict[str, Any]) -> bool:
        """A holder on this host whose process is gone, or this very process (a run of it that
        ended by an exception before its tear-down)."""
        if other.get("host") != self.holder["host"]:
            return False
        pid = other.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            return False
        return pid == os.getpid() or not _pid_alive(pid)

    def _remove_if_unchanged(self, other: dict[str, Any]) -> bool:
        """Move the stale lock aside and remove it, unless another run replaced it meanwhile (then
        it is put back and ``False`` returned)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.holder['token']}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return True
        moved = _read(aside)
        if moved is not None and moved.get("token") == other.get("token"):
            aside.unlink(missing_ok=True)
            return True
        try:
            os.link(aside, self.path)  # fails when a third run has locked meanwhile
        except OSError:
            pass
        aside.unlink(missing_ok=True)
        return False
