"""A benchmark corpus of a given size: documents of paragraphs drawn (seeded) from the public-domain
texts in ../shared/corpora, or from synthetic sentences where that folder is absent. Paragraphs are
recombined so that passages stay unique and clean's duplicate removal keeps the corpus whole."""

from __future__ import annotations

import random
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"
WORDS = ("the river mill lantern harbour orchard keeper winter letter boat quiet morning over "
         "stone bright slowly under garden road said because light storm little evening").split()


def paragraphs(seed: int = 0) -> list[str]:
    """The paragraph pool: every paragraph of the shared corpora, or synthetic ones."""
    pool: list[str] = []
    for path in sorted(SHARED.glob("*/*.txt")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        # paragraphs that clean keeps whole (clean.max_chars 2000): a longer one is cut into
        # sentences, and the pieces without the unique mark below would be dropped as duplicates
        pool += [p.strip() for p in text.split("\n\n") if 40 < len(p.strip()) <= 1800]
    if not pool:
        rng = random.Random(seed)
        pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))).capitalize() + "."
                for _ in range(20_000)]
    return pool


def build(directory: Path, megabytes: float, seed: int = 0, doc_bytes: int = 200_000) -> int:
    """Write Markdown documents of about doc_bytes each until the corpus holds `megabytes` MB.
    Returns the number of bytes written."""
    directory.mkdir(parents=True, exist_ok=True)
    pool, rng = paragraphs(seed), random.Random(seed)
    target, written, index = int(megabytes * 1_000_000), 0, 0
    while written < target:
        parts, size = [f"# Volume {index}: {rng.choice(WORDS).title()} {rng.choice(WORDS)}"], 0
        while size < doc_bytes:
            paragraph = rng.choice(pool)
            parts.append(f"{paragraph} ({index}.{len(parts)})")  # a unique mark per paragraph
            size += len(paragraph) + 12
        data = "\n\n".join(parts).encode("utf-8")
        (directory / f"volume-{index:05d}.md").write_bytes(data)
        written += len(data)
        index += 1
    return written
