"""params.yaml `ingest:`: which files are read, and how their records are found."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator

from finetune.config.section import Section


class IngestParams(Section):
    paths: list[str] = Field(default_factory=lambda: ["data/raw"], min_length=1)
    encoding_fallback: str | None = None
    on_error: Literal["fail", "skip"] = "fail"
    follow_symlinks: bool = False  # read symlinks that point outside ingest.paths
    text_field: str = "text"
    title_field: str = "title"
    # pairs mode; None means: detect input/output, prompt/response or instruction/input/output
    prompt_field: str | None = None
    response_field: str | None = None
    # chat mode; None means: detect messages / conversations (OpenAI, ShareGPT)
    messages_field: str | None = None
    # chat mode, long-form tables (one row per turn); None means: detect the usual names
    conversation_field: str | None = None
    turn_field: str | None = None
    role_field: str | None = None
    content_field: str | None = None
    # a field or column naming each record's group (an intent, a category): split stratifies by
    # it and evaluate scores each group; None: no groups
    group_field: str | None = None

    @field_validator("encoding_fallback")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                text_encoding = codecs.lookup(value)._is_text_encoding  # not base64, rot13, ...
            except LookupError:
                text_encoding = False
            if not text_encoding:
                raise ValueError(f"unknown encoding {value!r} (e.g. latin-1, cp1252)")
        return value
