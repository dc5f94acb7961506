"""Finding the files `ingest.paths` names (files, folders, globs; symlinks judged), and where
bad files and records go: BadInput, and Problems (fail on the first, or count them by reason)."""

from __future__ import annotations

import errno
import glob
import hashlib
import itertools
import os
from collections import Counter
from pathlib import Path

from finetune.config.ingest import IngestParams
from finetune.errors import UserError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}


RECORD_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet"}


# books: read by finetune.data.books (a Scrivener project is a folder read as one book; .doc is
# recognised to say how to convert it)
BOOK_SUFFIXES = {".epub", ".docx", ".odt", ".rtf", ".pdf", ".doc", ".scriv"}


SUPPORTED = TEXT_SUFFIXES | RECORD_SUFFIXES | BOOK_SUFFIXES


def is_bundle(path: Path) -> bool:
    """A folder that is one document (a Scrivener project): listed, not walked into."""
    return path.suffix.lower() == ".scriv" and path.is_dir()


class BadInput(Exception):
    """One bad file or record: `where` is the line/row/record, `reason` the metrics key."""

    def __init__(self, reason: str, message: str, where: str = "") -> None:
        super().__init__(message)
        self.reason, self.where = reason, where


class Problems:
    """Where bad files and records go: with `ingest.on_error: fail` the first one ends the stage
    with one line naming the file and position, with `skip` each is counted by reason."""

    def __init__(self, on_error: str, key: str = "ingest.on_error") -> None:
        self.fail, self.key = on_error == "fail", key
        self.skipped: Counter[str] = Counter()
        self.files: list[dict[str, str]] = []  # each whole file or entry skipped, and why

    def __call__(self, source: str, err: BadInput) -> None:
        if self.fail:
            where = f":{err.where}" if err.where else ""
            raise UserError(f"{source}{where}: {err} (set {self.key}: skip to skip it)")
        self.skipped[err.reason] += 1
        if not err.where:  # a file or an ingest.paths entry, not one record of a file
            self.files.append({"file": source.removeprefix("ingest.paths: "), "reason": str(err)})

    def total(self) -> int:
        return sum(self.skipped.values())


def _is_glob(entry: str) -> bool:
    return any(ch in entry for ch in "*?[")


def _root(entry: str) -> Path:
    """The directory an entry confines reading to: a glob's literal prefix, or the path itself."""
    if not _is_glob(entry):
        return Path(entry)
    parts = Path(entry).parts
    literal = list(itertools.takewhile(lambda part: not _is_glob(part), parts))
    return Path(*literal) if literal else Path(".")


def _walk(directory: Path, follow_symlinks: bool) -> list[Path | BadInput]:
    """Files below a directory, sorted, hidden ones left out. Symlinked directories are listed
    themselves (for `_link_problem` to judge) unless followed; a loop is entered once. A folder
    that cannot be listed is a BadInput in the list (os.walk would skip it without a word)."""
    found: list[Path | BadInput] = []
    seen: set[str] = set()

    def unreadable(error: OSError) -> None:
        found.append(BadInput("unreadable", f"cannot be read ({error.strerror})",
                              str(error.filename)))

    for dirpath, dirnames, filenames in os.walk(directory, onerror=unreadable,
                                                followlinks=follow_symlinks):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        bundles = [d for d in dirnames if is_bundle(Path(dirpath) / d)]
        found += [Path(dirpath) / d for d in bundles]
        dirnames[:] = [d for d in dirnames if d not in bundles]
        if not follow_symlinks:
            found += [Path(dirpath) / d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return found


def _link_problem(path: Path, roots: list[Path] | None, follow_symlinks: bool) -> BadInput | None:
    """A symlink loop, a dangling link, or (unless followed) a link out of the `roots`."""
    try:
        real = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return BadInput("symlink_loop", "a symlink loop")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return BadInput("symlink_loop", "a symlink loop")
        return BadInput("broken_symlink", f"a symlink to {os.readlink(path)}, which does not exist")
    if roots is not None and not follow_symlinks and not any(map(real.is_relative_to, roots)):
        return BadInput("symlink_outside", f"a symlink to {real}, outside ingest.paths (set "
                        "ingest.follow_symlinks: true to read it)")
    return None


def _entry_candidates(entry: str, follow_symlinks: bool) -> list[Path | BadInput]:
    """Every path an ingest.paths entry names: the file, the files below the directory, or the
    glob's matches (and the files below matched directories)."""
    path = Path(entry)
    if _is_glob(entry):
        matched = [Path(m) for m in sorted(glob.glob(entry, recursive=True))]
        if not matched:
            raise BadInput("missing_path", "the pattern matches nothing")
        return [f for m in matched
                for f in (_walk(m, follow_symlinks) if m.is_dir() and not is_bundle(m) else [m])]
    if is_bundle(path):
        return [path]
    if path.is_dir():
        return _walk(path, follow_symlinks)
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED:
            raise BadInput("unsupported_type", f"unsupported file type (supported: "
                           f"{', '.join(sorted(SUPPORTED))})")
        return [path]
    if path.is_symlink():
        return [path]  # dangling or a loop: _link_problem says which
    raise BadInput("missing_path", "no such file or directory")


def discover(entries: list[str], p: IngestParams, problems: Problems
             ) -> tuple[list[Path], list[dict[str, str]]]:
    """The supported files named by `ingest.paths`, sorted, each real file once; and the
    unsupported files the directories and globs held (ignored, not errors), with the reason."""
    roots = [Path(os.path.realpath(_root(entry))) for entry in entries]
    files: dict[Path, Path] = {}  # real path -> the path it was found under
    ignored: list[dict[str, str]] = []
    for entry in entries:
        try:
            candidates = _entry_candidates(entry, p.follow_symlinks)
        except BadInput as err:
            problems(f"ingest.paths: {entry}", err)
            continue
        usable, reported = 0, problems.total()
        for path in candidates:
            if isinstance(path, BadInput):  # a folder that cannot be listed
                problems(path.where, BadInput(path.reason, str(path)))
                continue
            # a file named on its own may point anywhere; one found in a directory may not
            problem = _link_problem(path, None if path == Path(entry) else roots, p.follow_symlinks)
            if problem:
                problems(path.as_posix(), problem)
            elif path.is_dir() and not is_bundle(path):
                continue  # a symlink to a directory inside ingest.paths: read where it points
            elif path.suffix.lower() not in SUPPORTED:
                left = {"file": path.as_posix(),
                        "reason": f"unsupported {path.suffix.lower() or 'file without extension'}"}
                if left not in ignored:  # seen through two entries
                    ignored.append(left)
            else:
                usable += 1
                real = path.resolve()
                files[real] = min(files.get(real, path), path, key=lambda f: f.as_posix())
        if not usable and problems.total() == reported:
            verb = "matches" if _is_glob(entry) else "contains"
            problems(f"ingest.paths: {entry}", BadInput(
                "no_supported_file", f"{verb} no supported file ({', '.join(sorted(SUPPORTED))})"))
    return sorted(files.values(), key=lambda f: f.as_posix()), ignored


def inside(entries: list[str], key: str, root: Path) -> None:
    """Refuse an entry outside the project: DVC cannot track it, and a teammate's clone would
    not have it."""
    top = root.resolve()
    for entry in entries:
        if not (top / _root(entry)).resolve().is_relative_to(top):
            raise UserError(f"{key}: {entry} is outside the project, where DVC cannot track it "
                            "and a clone would not have it; copy it into the project (e.g. "
                            "data/mine) and name that")


def md5(path: Path) -> str:
    """A file's MD5; a folder read as one document: the MD5 of its files' names and MD5s."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        listing = "".join(f"{f.relative_to(path).as_posix()}\0{md5(f)}\n" for f in files)
        return hashlib.md5(listing.encode()).hexdigest()
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def manifest(entries: list[str], files: list[Path], ignored: list[dict[str, str]] | None = None
             ) -> dict[str, object]:
    """What a stage will read, byte for byte: the entries, each file with its MD5, and the files
    it leaves out. It changes exactly when what the stage reads (or reports) does."""
    return {"entries": entries, "files": {f.as_posix(): md5(f) for f in files},
            "ignored": ignored or []}


PAIR_SUFFIXES = (".json", ".jsonl")


def preference_files(entries: list[str]) -> list[Path]:
    """The .json and .jsonl files `preference.paths` names (files, or folders read recursively),
    in path order, each once."""
    files: dict[Path, None] = {}
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in PAIR_SUFFIXES)
            if not found:
                raise UserError(f"preference.paths: {entry}: no .json or .jsonl file in this folder")
            files.update(dict.fromkeys(found))
        elif path.is_file():
            files[path] = None
        else:
            raise UserError(f"preference.paths: {entry}: no such file or folder")
    return list(files)
