"""params.yaml `clean:`: normalisation, deduplication and passage length."""

from __future__ import annotations

from pydantic import Field

from finetune.config.section import Section


class CleanParams(Section):
    strip_gutenberg: bool = True
    dedupe: bool = True
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(2000, ge=100)
