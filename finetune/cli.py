"""The ending every command shares: an expected error is one line on stderr and exit 1, Ctrl-C
is exit 130; anything else keeps its traceback (a programming error)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from finetune.errors import UserError

T = TypeVar("T")


def run_command(name: str, work: Callable[[], T],
                errors: tuple[type[Exception], ...] = (UserError,),
                interrupted: str | None = None) -> T:
    """Do a command's work; `errors` end as `<name>: error: <message>`, Ctrl-C after printing
    `interrupted`, if given."""
    try:
        return work()
    except errors as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=sys.stderr)
        sys.exit(130)
