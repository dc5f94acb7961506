"""How well `clean.redact` finds personal data, and how fast: `uv run python -m bench.redaction`.

Scores finetune.data.redaction on labelled support-chat lines (each piece of personal data
marked [[kind:text]]; everything else, the hard negatives included, is to be left alone): those
of bench/redaction_set.txt, written with the code, and the held-out lines of
bench/redaction_heldout.txt, written after it and scored once. Span by span: a find is right
when a labelled span of its kind has exactly its boundaries (exact) or shares a character with
it (overlap), each label matched once. Then
its speed on one core of this CPU, each over --mb MB: the labelled lines repeated (dense with
personal data), the messages of the sample support chats (data/examples/chat: order numbers,
prices and dates, no personal data) and the sample books (data/raw: prose). Writes
bench/redaction.json and bench/redaction.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT
from finetune.data.redaction import DEFAULT_REGIONS, KINDS, Span, find, redact

SETS = {"written_with_the_code": ROOT / "bench" / "redaction_set.txt",
        "held_out": ROOT / "bench" / "redaction_heldout.txt"}

MARK = re.compile(r"\[\[(\w+):(.+?)\]\]")


@dataclass(frozen=True)
class Line:
    text: str
    spans: tuple[Span, ...]


def parse(line: str) -> Line:
    """A marked line as its plain text and the spans of what was marked."""
    text, spans, last = "", [], 0
    for m in MARK.finditer(line):
        if m.group(1) not in KINDS:
            raise ValueError(f"unknown kind {m.group(1)!r} in: {line}")
        text += line[last:m.start()]
        spans.append(Span(len(text), len(text) + len(m.group(2)), m.group(1)))
        text += m.group(2)
        last = m.end()
    return Line(text + line[last:], tuple(spans))


def read_set(path: Path) -> list[Line]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parse(line) for line in lines if line.strip() and not line.startswith("#")]


def _matches(found: list[Span], labels: tuple[Span, ...], exact: bool) -> list[tuple[Span, Span]]:
    """Pairs (find, label) of one kind, each label and each find used once."""
    pairs, free = [], list(labels)
    for f in found:
        hit = next((g for g in free if g.kind == f.kind and (
            (g.start, g.end) == (f.start, f.end) if exact else g.start < f.end and f.start < g.end)), None)
        if hit is not None:
            free.remove(hit)
            pairs.append((f, hit))
    return pairs


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


def score(lines: list[Line], regions: tuple[str, ...]) -> dict[str, Any]:
    """Per kind and overall: labels, finds, exact and overlap precision and recall; and every
    miss and false find (by overlap), with its line."""
    counts = {k: {"labelled": 0, "found": 0, "exact": 0, "overlap": 0} for k in (*KINDS, "all")}
    misses, false_finds = [], []
    for line in lines:
        found = find(line.text, KINDS, regions)
        exact, overlap = _matches(found, line.spans, True), _matches(found, line.spans, False)
        for kind in (*KINDS, "all"):
            def mine(spans: Any, kind: str = kind) -> int:
                return sum(1 for s in spans if kind in ("all", s.kind))
            c = counts[kind]
            c["labelled"] += mine(line.spans)
            c["found"] += mine(found)
            c["exact"] += mine(f for f, _ in exact)
            c["overlap"] += mine(f for f, _ in overlap)
        matched_labels = {g for _, g in overlap}
        matched_finds = {f for f, _ in overlap}
        misses += [{"kind": g.kind, "text": line.text[g.start:g.end], "line": line.text}
                   for g in line.spans if g not in matched_labels]
        false_finds += [{"kind": f.kind, "text": line.text[f.start:f.end], "line": line.text}
                        for f in found if f not in matched_finds]
    table = {kind: {**c,
                    "precision": _ratio(c["exact"], c["found"]), "recall": _ratio(c["exact"], c["labelled"]),
                    "precision_overlap": _ratio(c["overlap"], c["found"]),
                    "recall_overlap": _ratio(c["overlap"], c["labelled"])}
             for kind, c in counts.items()}
    return {"lines": len(lines), "negative_lines": sum(1 for line in lines if not line.spans),
            "kinds": table, "misses": misses, "false_finds": false_finds}


def speed(texts: list[str], regions: tuple[str, ...]) -> dict[str, float]:
    """MB/s (UTF-8 bytes) of redact() over `texts`, one call per text, on one core."""
    size = sum(len(t.encode()) for t in texts)
    started = time.perf_counter()
    replaced = sum(sum(redact(t, KINDS, regions)[1].values()) for t in texts)
    seconds = time.perf_counter() - started
    return {"megabytes": round(size / 1e6, 3), "seconds": round(seconds, 3),
            "mb_s": round(size / 1e6 / seconds, 2), "replaced": replaced}


def prose(megabytes: float) -> list[str]:
    """The paragraphs of the sample books (data/raw), repeated up to `megabytes` MB."""
    paragraphs = [p for f in sorted((ROOT / "data" / "raw").iterdir())
                  for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return _repeated(paragraphs, megabytes)


def chats(megabytes: float) -> list[str]:
    """The messages of the sample support chats, repeated up to `megabytes` MB."""
    lines = (ROOT / "data" / "examples" / "chat" / "support_chats.jsonl").read_text(encoding="utf-8")
    messages = [m["content"] for line in lines.splitlines() for m in json.loads(line)["messages"]]
    return _repeated(messages, megabytes)


def _repeated(texts: list[str], megabytes: float) -> list[str]:
    out, size = [], 0
    while size < megabytes * 1e6:
        for t in texts:
            out.append(t)
            size += len(t.encode())
            if size >= megabytes * 1e6:
                break
    return out


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def set_table(name: str, s: dict[str, Any]) -> list[str]:
    lines = [f"**{name.replace('_', ' ').capitalize()}** ({SETS[name].name}): {s['lines']} lines, "
             f"{s['negative_lines']} of them with nothing to find.", "",
             "| kind | labelled | found | precision | recall | precision (overlap) | recall (overlap) |",
             "|---|---|---|---|---|---|---|"]
    for kind, c in s["kinds"].items():
        lines.append(f"| {kind} | {c['labelled']} | {c['found']} | {pct(c['precision'])} | "
                     f"{pct(c['recall'])} | {pct(c['precision_overlap'])} | {pct(c['recall_overlap'])} |")
    return lines + ["", "Missed: " + ("; ".join(f"{m['kind']} `{m['text']}`" for m in s["misses"])
                                      or "none") + ".",
                    "", "Found where nothing was labelled: " + ("; ".join(
                        f"{f['kind']} `{f['text']}`" for f in s["false_finds"]) or "none") + ".", ""]


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Labelled support-chat lines, phone regions {', '.join(r['regions'])}; exact: the same "
             "boundaries, overlap: a shared character (same kind, each label once).", ""]
    for name, s in r["sets"].items():
        lines += set_table(name, s)
    lines += [f"Speed on one core of this CPU ({r['machine']['cpu']}): "
              f"{r['speed']['chat']['mb_s']} MB/s on the labelled lines repeated "
              f"({r['speed']['chat']['megabytes']} MB, dense with personal data), "
              f"{r['speed']['sample_chats']['mb_s']} MB/s on the sample support chats' messages, "
              f"{r['speed']['prose']['mb_s']} MB/s on the sample books "
              f"({r['speed']['prose']['megabytes']} MB of prose).", ""]
    return "\n".join(lines)


def cpu() -> str:
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.exists() else []
    return names[0] if names else platform.processor()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redaction", description=__doc__)
    parser.add_argument("--regions", nargs="+", default=list(DEFAULT_REGIONS),
                        help="clean.phone_regions (default: the params default)")
    parser.add_argument("--mb", type=float, default=2.0, help="MB of text for each speed figure")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "redaction.json",
                        help="the figures; the table goes to the .md beside it")
    args = parser.parse_args(argv)
    regions = tuple(args.regions)
    sets = {name: read_set(path) for name, path in SETS.items()}
    labelled = [line.text for lines in sets.values() for line in lines]
    results = {"machine": {"cores": os.cpu_count(), "cpu": cpu()}, "regions": list(regions),
               "sets": {name: score(lines, regions) for name, lines in sets.items()},
               "speed": {"chat": speed(_repeated(labelled, args.mb), regions),
                         "sample_chats": speed(chats(args.mb), regions),
                         "prose": speed(prose(args.mb), regions)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
