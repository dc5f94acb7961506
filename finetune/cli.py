"""The ending every command shares: an expected error is one line on stderr and exit 1, Ctrl-C
is exit 130; anything else keeps its traceback (a programming error). A process that has done
its work ends without the interpreter's teardown (exit_now)."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from finetune.errors import UserError

T = TypeVar("T")


def run_command(name: str, work: Callable[[], T],
                errors: tuple[type[Exception], ...] = (UserError,),
                interrupted: str | None = None) -> T:
    """Do a command's work; `errors` end as `<name>: error: <message>`, Ctrl-C after printing
    `interrupted`, if given. Started as the console script `name` (or `python -m
    commands.<name>`), the process ends when the work is done (exit_now); called from Python, this
    returns what the work returned."""
    try:
        result = work()
    except errors as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr)
        sys.exit(130)
    if started_as(name):
        exit_now(0)
    return result


def running_as(module: str) -> bool:
    """Whether this process is `python -m <module>` (not a test or script that imports it)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == module


def started_as(command: str) -> bool:
    """Whether this process is the console script `command` (`uv run generate`), or `python -m
    commands.<command>`."""
    return Path(sys.argv[0]).stem == command or running_as(f"commands.{command}")


def exit_now(code: int = 0) -> NoReturn:
    """End the process as the interpreter's shutdown would, minus its teardown of every module.

    A process that imported torch and transformers holds ~3,700 modules; after the last line of
    work, the interpreter's shutdown spends 1.5-2 s here in garbage collections over all of them,
    freeing memory the operating system takes back at once anyway. This does what that shutdown
    does first (waits for the threads that are not daemons, runs the atexit handlers, which close
    logging, multiprocessing and temporary files, flushes stdout and stderr), then ends."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe the reader closed
            pass
    os._exit(code)
