"""Personal data out of the texts a model sees (`clean.redact`): e-mail addresses, phone numbers,
payment card numbers, IBANs, IP addresses and URLs that carry a user name or password are each
replaced by a typed placeholder (`<EMAIL>`, `<PHONE>`, `<CARD>`, `<IBAN>`, `<IP>`, `<URL>`).

Candidates are found by pattern and kept only when a validator agrees: phone numbers are what
libphonenumber (`phonenumbers`) matches and finds valid for a region, card numbers must pass the
Luhn check (`stdnum.luhn`), IBANs their country's format and check digits (`stdnum.iban`), IP
addresses must parse (`ipaddress`); no two finds overlap (ORDER). Deterministic: the same text
gives the same output on any machine, with no network. Person names are not looked for: that
needs a named-entity model, and none can be installed here from a trusted source (docs/data.md)."""

from __future__ import annotations

import ipaddress
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import phonenumbers
from stdnum import iban, luhn

KINDS = ("email", "phone", "card", "iban", "ip", "url")

# the order in which they are looked for, each in what the ones before it left: a URL holds an
# e-mail-like user@host, an IBAN or a card number holds digits libphonenumber might take
ORDER = ("url", "email", "iban", "card", "ip", "phone")

PLACEHOLDER = {kind: f"<{kind.upper()}>" for kind in KINDS}

DEFAULT_REGIONS = ("GB", "US")  # clean.phone_regions: where numbers without +country are read

REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)

# scheme://user[:password]@host...: the URL up to the next space, less trailing punctuation
CREDENTIAL_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/?#@]+@[^\s<>\"']+")

TRAILING = ".,;:!?)]}'\""

# the local part as the WHATWG HTML standard's "valid e-mail address" has it (Unicode letters too)
# and a domain of dot-separated labels ending in a top-level domain of two letters or more
EMAIL = re.compile(r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*"
                   r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])")

# two letters, two check digits, then up to 30 letters and digits, grouped by 4 or not at all
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,3})?"
                  r"(?![A-Za-z0-9])")

# 13 to 19 digits: in groups of four (the last one shorter or not), 4-6-5 or 4-6-4 (American
# Express, Diners Club), or unbroken; never the middle of a longer run of digit groups
CARD = re.compile(r"(?<![\d-])(?<!\d )(?:\d{4}(?:[ -]?\d{4}){2,3}(?:[ -]?\d{1,4})?"
                  r"|\d{4}[ -]?\d{6}[ -]?\d{4,5}|\d{13,19})(?![ -]?\d)")

CARD_FIRST_DIGITS = "23456"  # ISO/IEC 7812: 2-6 are the card networks (Visa 4, Mastercard 2 and 5...)

IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")

IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]|\.\d)")

# a dotted number after these is a version, not an address: "firmware 4.1.0.2", "v1.2.3.4"
VERSION_BEFORE = re.compile(r"(?:\bversion|\bver\.?|\bfirmware|\bbuild|\brelease|\bv)\s*$", re.I)

MAYBE = re.compile(r"[\d@]|::")  # nothing but IPv6 written with letters only can hide without

# seven digits close together: the fewest a valid number has, with its country code (Niue's)
PHONE_DIGITS = re.compile(r"\d(?:[^\w\n]{0,4}\d){6}")


@dataclass(frozen=True)
class Span:
    """Where one piece of personal data is: text[start:end], of `kind` (one of KINDS)."""

    start: int
    end: int
    kind: str


def _urls(text: str) -> Iterator[tuple[int, int]]:
    for m in CREDENTIAL_URL.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in TRAILING:
            end -= 1
        if "@" in text[m.start():end]:
            yield m.start(), end


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in EMAIL.finditer(text):
        yield m.start(), m.end()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    """Each candidate, or the longest prefix of it that ends a group and is a valid IBAN (an
    IBAN followed by a word of four capitals or digits: "DE89 3704 ... 00 2024")."""
    for m in IBAN.finditer(text):
        candidate = m.group()
        while len(candidate) >= 15:
            if iban.is_valid(candidate.replace("-", "")):
                yield m.start(), m.start() + len(candidate)
                break
            candidate = re.sub(r"[ -]?[A-Za-z0-9]{1,4}$", "", candidate)


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for m in CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and digits[0] in CARD_FIRST_DIGITS and luhn.is_valid(digits):
            yield m.start(), m.end()


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for m in IPV4.finditer(text):
        if VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:  # a part over 255, or a leading zero (a date, a version)
            continue
        yield m.start(), m.end()
    for m in IPV6.finditer(text):
        groups = [g for g in m.group().split(":") if g]
        if len(groups) < 2 or not any(c.isdigit() for c in m.group()):
            continue  # "::", "a:b", and words and times that look like groups
        try:
            ipaddress.IPv6Address(m.group())
        except ValueError:
            continue
        yield m.start(), m.end()


def _phones(text: str, regions: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    """Numbers libphonenumber finds valid, read as numbers of each region in turn (one written
    with +country is found by the first)."""
    found: list[Span] = []
    for region in regions:
        if not PHONE_DIGITS.search(text):
            break
        matches = phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID,
                                                  max_tries=sys.maxsize)
        found = [Span(m.start, m.end, "phone") for m in matches]
        yield from ((s.start, s.end) for s in found)
        if found:
            text = _masked(text, found)  # the next region need not read them again


def _spliced(text: str, spans: list[Span], filler: Callable[[Span], str]) -> str:
    """`text` with each of `spans` (in order, none overlapping) replaced by filler(span)."""
    parts, last = [], 0
    for span in spans:
        parts += [text[last:span.start], filler(span)]
        last = span.end
    parts.append(text[last:])
    return "".join(parts)


def _masked(text: str, spans: list[Span]) -> str:
    """`text` with `spans` blanked out by NUL, which clean removes from any text and no finder
    takes for part of a find (offsets kept): later finders neither see what earlier ones found,
    nor spend time on its digits, nor find across it."""
    return _spliced(text, sorted(spans, key=lambda s: s.start), lambda s: "\0" * (s.end - s.start))


FINDERS: dict[str, Callable[[str, tuple[str, ...]], Iterator[tuple[int, int]]]] = {
    "url": lambda t, _: _urls(t), "email": lambda t, _: _emails(t), "iban": lambda t, _: _ibans(t),
    "card": lambda t, _: _cards(t), "ip": lambda t, _: _ips(t), "phone": _phones}


def find(text: str, kinds: tuple[str, ...] = KINDS, regions: tuple[str, ...] = DEFAULT_REGIONS
         ) -> list[Span]:
    """The personal data of `kinds` in `text`, in order, none overlapping another: each kind is
    looked for in what the kinds before it in ORDER left."""
    if not kinds or not MAYBE.search(text):
        return []
    taken: list[Span] = []
    for kind in ORDER:
        if kind in kinds:
            rest = _masked(text, taken) if taken else text
            end_of_last = 0
            for start, end in sorted(FINDERS[kind](rest, regions)):
                if start >= end_of_last:  # a kind's own finds overlap in no text seen so far
                    taken.append(Span(start, end, kind))
                    end_of_last = end
    return sorted(taken, key=lambda s: s.start)


def redact(text: str, kinds: tuple[str, ...] = KINDS, regions: tuple[str, ...] = DEFAULT_REGIONS
           ) -> tuple[str, Counter[str]]:
    """`text` with each piece of personal data of `kinds` replaced by its kind's placeholder, and
    how many of each kind were replaced."""
    spans = find(text, kinds, regions)
    if not spans:
        return text, Counter()
    return _spliced(text, spans, lambda s: PLACEHOLDER[s.kind]), Counter(s.kind for s in spans)


class Redactor:
    """redact() with one set of kinds and regions over many texts, counting what it replaced
    (`found`, by kind); with no kinds, every text is returned as it is."""

    def __init__(self, kinds: tuple[str, ...], regions: tuple[str, ...] | list[str] = DEFAULT_REGIONS
                 ) -> None:
        self.kinds, self.regions = kinds, tuple(regions)
        self.found: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        if not self.kinds:
            return text
        text, counts = redact(text, self.kinds, self.regions)
        self.found.update(counts)
        return text

    def values(self, value: Any) -> Any:
        """A JSON value (a tool call's arguments) with every string in it redacted; keys and
        other values as they are."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.values(v) for v in value]
        if isinstance(value, dict):
            return {k: self.values(v) for k, v in value.items()}
        return value
