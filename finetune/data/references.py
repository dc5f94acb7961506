"""Finding the reference text files `evaluate.reference_paths` names (general English that is
not the user's; finetune.scoring.reference reads and scores it)."""

from __future__ import annotations

from pathlib import Path

from finetune.errors import UserError

REFERENCE_SUFFIXES = (".txt", ".md")


def reference_files(entries: list[str]) -> list[Path]:
    """The .txt and .md files `evaluate.reference_paths` names (files, or folders read
    recursively), in path order."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*")
                            if f.is_file() and f.suffix.lower() in REFERENCE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"evaluate.reference_paths: {entry}: no such file or folder")
    if entries and not files:
        raise UserError(f"evaluate.reference_paths: no .txt or .md file in {', '.join(entries)} "
                        "(or [] to leave the check out)")
    return files
