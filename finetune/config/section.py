"""What every params.yaml section's schema shares: unknown keys refused, values frozen; and the
one-line message naming section.key for the first problem pydantic found."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


KEY_FIRST = re.compile(r"^[a-z_]+(\.[a-z_]+)+: ")


def _location(err: dict[str, Any]) -> str:
    return ".".join(str(part) for part in err["loc"] if not str(part).startswith("function-"))


def _closest_key(err: dict[str, Any], root: type[BaseModel]) -> str:
    """For an unknown key, name the closest valid key of the same section."""
    *parent, key = err["loc"]
    model: type[BaseModel] = root
    for part in parent:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    match = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
    return f" (did you mean {'.'.join([*map(str, parent), match[0]])}?)" if match else ""


def describe(error: ValidationError, root: type[BaseModel], source: str = "params.yaml") -> str:
    """One line naming section.key and the problem, for the first error pydantic found when
    validating `root` (the model whose fields are the top-level keys)."""
    err = error.errors()[0]
    where = _location(err)
    if err["type"] == "extra_forbidden":
        return f"{source}: {where}: unknown key{_closest_key(err, root)}"
    msg = err["msg"].removeprefix("Value error, ")
    if KEY_FIRST.match(msg):  # a check across keys names the key to change itself
        return f"{source}: {msg}"
    got = "" if err["type"].startswith("value_error") else f" (got {err.get('input')!r})"
    return f"{source}: {where or '(top level)'}: {msg}{got}"
