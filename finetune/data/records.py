"""What the rows of the data stages hold: the text that makes two rows duplicates, and its digest
(clean removes duplicates by it, split keeps rows with equal digests in one split)."""

from __future__ import annotations

import hashlib

# what makes two rows duplicates; a conversation is its stored JSON (finetune.data.conversations)
KEY = {"text": ("text",), "pairs": ("prompt", "response"), "chat": ("conversation",)}


def digest(*parts: str) -> bytes:
    """16 bytes that stand for a row's text (parts joined by NUL, which clean removes)."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).digest()
