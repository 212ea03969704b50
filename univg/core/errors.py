"""Expected failures and the one line each entry point turns them into.

An expected failure is bad input the user can fix: a config value, a data record, a missing or
unreadable file, a checkpoint, a reward plug-in, a full disk. Every ``python -m univg...`` command
ends such a failure with one line, ``<prog>: error: <message>``, and exit status 2, whether it
happens while parsing, while building the run or in the middle of training; ``UNIVG_DEBUG=1``
raises the original error with its traceback instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

#: Exit status of a command stopped by bad input, as argparse uses.
EXIT_USAGE = 2

#: ``errno`` values of a disk that cannot take the write: full, over quota, read-only.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class UsageError(Exception):
    """Bad input the user can fix; the message is one line naming the file, record, field or key."""


class RewardError(UsageError, ValueError):
    """A reward function (built-in or plug-in) raised or returned something unusable; names the reward."""


def disk_error(err: BaseException) -> OSError | None:
    """The full-disk / quota / read-only ``OSError`` behind ``err`` (itself or in its chain), if any:
    torch reports a failed write as a ``RuntimeError`` whose context is the ``OSError``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def is_expected(err: BaseException) -> bool:
    """Is ``err`` bad input (one line, exit 2) rather than a bug (traceback)?

    >>> is_expected(UsageError("x")), is_expected(FileNotFoundError("x")), is_expected(KeyError("x"))
    (True, True, False)
    >>> is_expected(RuntimeError("write failed"))
    False
    """
    return isinstance(err, UsageError | FileNotFoundError | PermissionError) or disk_error(err) is not None


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message; its last line is the original message.

    >>> one_line(ValueError("a.json record 3:\\n  field 'box' missing"))
    "a.json record 3: field 'box' missing"
    >>> one_line(ValueError("Caught ValueError in DataLoader worker process 0.\\nOriginal Traceback "
    ...                     "(most recent call last):\\n  File x\\nValueError: a.json record 3: bad box\\n"))
    'a.json record 3: bad box'
    """
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        name, _, rest = last.partition(": ")
        text = rest if rest and " " not in name else last
    disk = disk_error(err)
    if disk is not None and disk is not err and not text.strip():
        text = str(disk)
    return " ".join(text.split()) or type(err).__name__


def error_summary(err: BaseException) -> str:
    """``Type: first line of the message`` (the type alone when there is no message): how an error
    raised by someone else's code (torch's loader, a reward plug-in, a download) is quoted in ours.

    >>> error_summary(RuntimeError("PytorchStreamReader failed\\n  at line 3")), error_summary(KeyError())
    ('RuntimeError: PytorchStreamReader failed', 'KeyError')
    """
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


@contextmanager
def reported(prog: str) -> Iterator[None]:
    """Run the body; an expected failure ends as ``<prog>: error: ...`` on stderr and exit status 2."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        if os.environ.get("UNIVG_DEBUG") or not is_expected(err):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def usage_status(prog: str, err: BaseException) -> int:
    """For a ``main`` that returns its exit status: an expected failure is printed as one line and
    gives :data:`EXIT_USAGE`; anything else (or ``UNIVG_DEBUG=1``) is raised again."""
    if os.environ.get("UNIVG_DEBUG") or not is_expected(err):
        raise err
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return EXIT_USAGE


F = TypeVar("F", bound=Callable[..., object])


def entry_point(prog: str) -> Callable[[F], F]:
    """Decorate a command's ``main`` so its expected failures end as one line (:func:`reported`)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: object, **kwargs: object) -> object:
            with reported(prog):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


__all__ = [
    "DISK_ERRNOS",
    "EXIT_USAGE",
    "RewardError",
    "UsageError",
    "disk_error",
    "entry_point",
    "is_expected",
    "one_line",
    "reported",
    "usage_status",
]


# Lines of jsonargparse's nested union report that carry no information for the user.
_NOISE = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value|"
    r"Expected a <class 'NoneType'>|Problem with given class_path)"
)
_KEY = re.compile(r'^(- )?Parser key "([^"]+)":\s*(.*)$')


def condense_parse_error(message: str) -> str:
    """One line out of jsonargparse's nested report: the dotted key as a YAML or the command line
    writes it, and the innermost complaint.

    >>> condense_parse_error('''Parser key "model":
    ...   Does not validate against any of the Union subtypes
    ...   Errors:
    ...     - Problem with given class_path 'univg.modules.SFTModule':
    ...         Parser key "backbone":
    ...           Errors:
    ...             - Problem with given class_path 'univg.model.backbone.BackboneSpec':
    ...                 Parser key "preset":
    ...                   Expected a Literal['tiny']. Got value: qwen9
    ...     - Expected a <class 'NoneType'>
    ...   Given value: NestedArg(key='backbone.preset', val='qwen9')''')
    "model.init_args.backbone.preset: Expected a Literal['tiny']. Got value: qwen9"
    >>> condense_parse_error('''Parser key "data":
    ...   Errors:
    ...     - Problem with given class_path 'univg.data.SyntheticDataModule':
    ...         Parser key "batch_size":
    ...           Errors:
    ...             - Expected a <class 'int'>
    ...             - Expected a <class 'NoneType'>
    ...           Given value type: <class 'str'>
    ...           Given value: four
    ...     - Expected a <class 'NoneType'>''')
    "data.init_args.batch_size: Expected a <class 'int'>. Got value: four"
    >>> condense_parse_error("unrecognized arguments: --trainer.max_stepz 3")
    'unrecognized arguments: --trainer.max_stepz 3'
    """
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing "Parser key" lines
    found: tuple[int, str] | None = None  # a complaint without its value, and its key's indent
    for raw in message.splitlines():
        line = raw.strip()
        if not line:
            continue
        indent = len(raw) - len(raw.lstrip())
        if found is not None:  # an optional field's report gives the value after the complaint
            if indent <= found[0]:
                break
            if line.startswith("Given value: "):
                return f"{found[1]}. Got value: {line.removeprefix('Given value: ')}"
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = _KEY.match(line)
        if key is not None:
            stack.append((indent, key.group(2)))
            if key.group(3):  # the complaint on the same line: 'Parser key "config": File does not exist'
                return f"{_dotted(stack)}: {key.group(3)}"
            continue
        if _NOISE.match(line):
            continue
        text = line[2:] if line.startswith("- ") else line
        unknown = re.match(r"Option '([^']+)' is not accepted", text)
        if unknown is not None:  # name the unknown key itself: model.init_args.lrr
            stack.append((indent, unknown.group(1)))
            text = "no such option"
        complaint = f"{_dotted(stack)}: {text}" if stack else text
        if "Got value" in text or not stack:
            return complaint
        found = (stack[-1][0], complaint)
    return found[1] if found is not None else " ".join(message.split())


def _dotted(stack: list[tuple[int, str]]) -> str:
    keys = [key for _, key in stack]
    # A subclass-mode part (model, data) takes its arguments under init_args.
    if len(keys) > 1 and keys[0] in ("model", "data"):
        keys.insert(1, "init_args")
    return ".".join(keys)
