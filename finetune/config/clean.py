"""params.yaml `clean:`: normalisation, deduplication, passage length and personal data."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from finetune.config.section import Section
from finetune.data.redaction import DEFAULT_REGIONS, KINDS, REGIONS

# personal data replaced by a placeholder in every text a model sees (finetune.data.redaction):
# auto: every kind in pairs and chat mode, none in text mode | true: every kind | false: none
# | a list of kinds (KINDS: email, phone, card, iban, ip, url)
Redact = bool | Literal["auto"] | list[str]


class CleanParams(Section):
    strip_gutenberg: bool = True
    dedupe: bool = True
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(2000, ge=100)
    redact: Redact = "auto"
    # where a phone number written without +country is read as a national number (ISO 3166 codes)
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_REGIONS))

    @field_validator("redact", mode="before")
    @classmethod
    def _known_kinds(cls, value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(k, str) for k in value):
            unknown = [k for k in value if k not in KINDS]
            if unknown:
                raise ValueError(f"unknown kind {unknown[0]!r} (kinds: {', '.join(KINDS)})")
            return value
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"must be auto, true, false or a list of kinds ({', '.join(KINDS)}) "
                         f"(got {value!r})")

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in REGIONS]
        if unknown:
            hint = " (GB is the United Kingdom's code)" if unknown[0] == "UK" else (
                " (ISO 3166 codes, in capitals: GB, US, DE...)")
            raise ValueError(f"unknown region {unknown[0]!r}{hint}")
        return value

    def redacted(self, mode: str) -> tuple[str, ...]:
        """The kinds of personal data clean replaces in `mode`."""
        if self.redact == "auto":
            return () if mode == "text" else KINDS
        if isinstance(self.redact, bool):
            return KINDS if self.redact else ()
        return tuple(k for k in KINDS if k in self.redact)
